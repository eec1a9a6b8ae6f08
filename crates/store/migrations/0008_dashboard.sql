-- Dashboard operators, their sessions, and the indexes the dashboard's
-- per-app views read through.

CREATE TABLE operators (
    id            uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    -- argon2id, PHC string format.
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE operator_sessions (
    -- SHA-256 of the cookie's secret: a leaked table opens no session.
    token_hash   bytea PRIMARY KEY,
    operator_id  uuid NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE INDEX operator_sessions_expiry ON operator_sessions (expires_at);

-- Deliveries per hour and recent failures of one app.
CREATE INDEX deliveries_app_settled ON deliveries (app_id, settled_at) WHERE settled_at IS NOT NULL;
-- An installation's recent deliveries.
CREATE INDEX deliveries_app_install ON deliveries (app_id, install_id, created_at) WHERE install_id IS NOT NULL;
