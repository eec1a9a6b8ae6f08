-- Provider credentials are stored sealed (AES-256-GCM, key from the
-- environment); the plaintext column is no longer written.
ALTER TABLE provider_credentials ADD COLUMN sealed bytea;
ALTER TABLE provider_credentials ALTER COLUMN config DROP NOT NULL;
