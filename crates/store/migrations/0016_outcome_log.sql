-- What happened to each delivery is appended to a log, never updated in
-- place, and no row is written per device ahead of its outcome:
--
-- * a message whose devices are named when it is accepted (transactional,
--   trigger) keeps them in `messages.recipients`;
-- * `delivery_outcomes` is the log, partitioned by the day it was recorded so
--   that retention drops whole partitions;
-- * a delivery's status is its outcome, or `pending` while a recipient has
--   none (the view `delivery_status` says it in one place). A replayed outcome
--   is not appended again; a `failed` one is superseded by a real outcome
--   appended after it.

ALTER TABLE messages ADD COLUMN recipients jsonb;

CREATE TABLE delivery_outcomes (
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    message_id   uuid NOT NULL,
    delivery_id  uuid NOT NULL,
    app_id       uuid NOT NULL,
    platform     text NOT NULL,
    token        text NOT NULL,
    install_id   text,
    status       text NOT NULL
                 CHECK (status IN ('delivered', 'rejected', 'unknown', 'expired', 'failed')),
    reason       text,
    provider_id  text,
    attempts     integer NOT NULL,
    settled_at   timestamptz NOT NULL
) PARTITION BY RANGE (recorded_at);

-- A message's outcomes, and whether a delivery has one.
CREATE INDEX delivery_outcomes_message ON delivery_outcomes (message_id, delivery_id);
-- An app's outcomes over time (stats, recent failures): appended at the right edge.
CREATE INDEX delivery_outcomes_app ON delivery_outcomes (app_id, recorded_at);
-- An installation's latest deliveries.
CREATE INDEX delivery_outcomes_install ON delivery_outcomes (app_id, install_id, recorded_at)
    WHERE install_id IS NOT NULL;

-- Recovery and retention walk the messages that name their recipients by age.
CREATE INDEX messages_with_recipients ON messages (created_at) WHERE recipients IS NOT NULL;

-- The partitions: everything before today in one, then a day each for two
-- weeks ahead. The recorder keeps creating days ahead and drops the days past
-- retention.
DO $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day date;
BEGIN
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF delivery_outcomes FOR VALUES FROM (MINVALUE) TO (%L)',
        'delivery_outcomes_before_' || to_char(today, 'YYYYMMDD'),
        today::timestamp AT TIME ZONE 'UTC');
    FOR i IN 0..14 LOOP
        day := today + i;
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF delivery_outcomes FOR VALUES FROM (%L) TO (%L)',
            'delivery_outcomes_p' || to_char(day, 'YYYYMMDD'),
            day::timestamp AT TIME ZONE 'UTC',
            (day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;

-- The deliveries written so far: their outcomes into the log, and the devices
-- of the messages that named them into the messages.
INSERT INTO delivery_outcomes (recorded_at, message_id, delivery_id, app_id, platform, token,
                               install_id, status, reason, provider_id, attempts, settled_at)
SELECT LEAST(COALESCE(settled_at, now()), now()), message_id, id, app_id, platform, token,
       install_id, status, reason, provider_id, attempts, COALESCE(settled_at, now())
FROM deliveries WHERE status <> 'pending'
ORDER BY message_id, id;

UPDATE messages m SET recipients = r.recipients
FROM (SELECT d.message_id,
             jsonb_agg(jsonb_build_object('id', d.id, 'platform', d.platform, 'token', d.token,
                                          'install_id', d.install_id, 'locale', d.locale,
                                          'apns_sandbox', d.apns_sandbox) ORDER BY d.id) AS recipients
      FROM deliveries d JOIN messages dm ON dm.id = d.message_id
      WHERE dm.kind <> 'campaign'
      GROUP BY d.message_id) r
WHERE m.id = r.message_id;

DROP TABLE deliveries;

-- Each delivery's status in one place: its outcome (a real one before a
-- `failed` one, else the first recorded), or `pending` for a named recipient
-- without one. For reading by message; the hot paths query the log directly.
CREATE VIEW delivery_status AS
SELECT * FROM (
    SELECT DISTINCT ON (o.message_id, o.delivery_id)
           o.delivery_id AS id, o.message_id, o.app_id, o.platform, o.token, o.install_id,
           o.status, o.reason, o.provider_id, o.attempts, o.settled_at, o.recorded_at
    FROM delivery_outcomes o
    ORDER BY o.message_id, o.delivery_id, (o.status = 'failed'), o.recorded_at
) settled
UNION ALL
SELECT r.id, m.id, m.app_id, r.platform, r.token, r.install_id,
       'pending', NULL, NULL, 0, NULL, NULL
FROM messages m
CROSS JOIN LATERAL jsonb_to_recordset(m.recipients) AS r(id uuid, platform text, token text, install_id text)
WHERE m.recipients IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM delivery_outcomes o
                  WHERE o.message_id = m.id AND o.delivery_id = r.id);
