-- Trigger campaigns: the events apps post (the table is also their outbox),
-- the rules, and one durable timer per (rule, entry event).

CREATE TABLE events (
    app_id        uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    event_id      text NOT NULL,
    name          text NOT NULL,
    user_key      text NOT NULL,
    body          jsonb NOT NULL,
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    PRIMARY KEY (app_id, event_id)
);
CREATE INDEX events_unpublished ON events (received_at) WHERE published_at IS NULL;

CREATE TABLE triggers (
    id           uuid PRIMARY KEY,
    app_id       uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name         text NOT NULL,
    entry_event  text NOT NULL,
    spec         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX triggers_app ON triggers (app_id, created_at);

-- A replayed event finds its timer already there: it never fires twice.
CREATE TABLE trigger_timers (
    trigger_id   uuid NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    event_id     text NOT NULL,
    app_id       uuid NOT NULL,
    user_key     text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    due_at       timestamptz NOT NULL,
    attributes   jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'fired', 'cancelled', 'dropped', 'capped', 'unreachable')),
    settled_at   timestamptz,
    message_id   uuid,
    PRIMARY KEY (trigger_id, event_id)
);
CREATE INDEX trigger_timers_due ON trigger_timers (due_at) WHERE status = 'pending';
CREATE INDEX trigger_timers_user ON trigger_timers (trigger_id, user_key, status);

-- App-wide quiet hours for trigger pushes.
ALTER TABLE apps ADD COLUMN quiet_hours jsonb;
