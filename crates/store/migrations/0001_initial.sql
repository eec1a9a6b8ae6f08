-- Herald's first schema: apps and keys, credentials, installations, messages,
-- their deliveries (one row per device, holding its outcome), idempotency keys
-- and the outbox.

CREATE TABLE apps (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only a SHA-256 of each key is stored; the secret is shown once, at creation.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('server', 'sdk')),
    key_hash    bytea NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE provider_credentials (
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    provider    text NOT NULL CHECK (provider IN ('apns', 'fcm')),
    config      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, provider)
);

CREATE TABLE installations (
    app_id          uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    install_id      text NOT NULL,
    custom_id       text,
    platform        text NOT NULL CHECK (platform IN ('ios', 'android')),
    token           text,
    locale          text,
    time_zone       text,
    tags            text[] NOT NULL DEFAULT '{}',
    attributes      jsonb NOT NULL DEFAULT '{}',
    opted_in        boolean NOT NULL DEFAULT true,
    invalidated_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, install_id)
);
CREATE INDEX installations_token ON installations (app_id, platform, token);

CREATE TABLE messages (
    id               uuid PRIMARY KEY,
    app_id           uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('transactional', 'campaign', 'trigger')),
    notification     jsonb NOT NULL,
    policy           text NOT NULL CHECK (policy IN ('at_most_once', 'at_least_once')),
    expires_at       timestamptz,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_app ON messages (app_id, created_at);

-- One row per (message, device): what was accepted, and how it ended.
CREATE TABLE deliveries (
    id           uuid PRIMARY KEY,
    message_id   uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    app_id       uuid NOT NULL,
    platform     text NOT NULL,
    token        text NOT NULL,
    install_id   text,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'delivered', 'rejected', 'unknown', 'expired', 'failed')),
    reason       text,
    provider_id  text,
    attempts     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    settled_at   timestamptz
);
CREATE INDEX deliveries_message ON deliveries (message_id);
CREATE INDEX deliveries_pending ON deliveries (created_at, id) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
    app_id           uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    key              text NOT NULL,
    fingerprint      bytea NOT NULL,
    message_id       uuid NOT NULL,
    response_status  integer NOT NULL,
    response_body    jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (app_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Accepted work waiting to be published; a row stays until Kafka acknowledged it.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    message_id    uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
