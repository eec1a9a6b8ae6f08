-- The rest of an installation's fields, and lookups by user and by token.
ALTER TABLE installations
    ADD COLUMN apns_environment text NOT NULL DEFAULT 'production'
        CHECK (apns_environment IN ('production', 'sandbox')),
    ADD COLUMN app_version text;
CREATE INDEX installations_custom_id ON installations (app_id, custom_id) WHERE custom_id IS NOT NULL;

ALTER TABLE deliveries ADD COLUMN apns_sandbox boolean NOT NULL DEFAULT false;
ALTER TABLE deliveries ADD COLUMN locale text;

-- A push for later: its outbox row is published at send_at.
ALTER TABLE messages ADD COLUMN send_at timestamptz;
ALTER TABLE outbox ADD COLUMN publish_at timestamptz;
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (publish_at, id) WHERE published_at IS NULL;
