-- Outcome webhooks: one URL and signing secret per app, and the events
-- waiting to be posted there (with their retries).
ALTER TABLE apps ADD COLUMN webhook_url text, ADD COLUMN webhook_secret text;

CREATE TABLE webhook_events (
    id               bigserial PRIMARY KEY,
    app_id           uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    payload          jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    failed_at        timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
