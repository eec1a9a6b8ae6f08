-- Gateways keep the API keys they have seen in memory. A key revoked (or
-- removed, or changed in any way, by Herald or by hand) must stop working on
-- every gateway at once, so each change is announced on a channel the
-- gateways listen on; the payload is the key's hash, which is what they
-- index by.
CREATE FUNCTION herald_api_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_api_keys', encode(OLD.key_hash, 'hex'));
    RETURN NULL;
END
$$;

CREATE TRIGGER api_key_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION herald_api_key_changed();
