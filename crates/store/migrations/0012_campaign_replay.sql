-- Recovery replays what a campaign's waves had produced, not a fresh
-- audience: when each wave last moved its checkpoint, and, once rewound by
-- recovery, the frontier and the time the replay is bounded by.
ALTER TABLE campaign_waves
    ADD COLUMN checkpointed_at  timestamptz,
    ADD COLUMN replay_until     text,
    ADD COLUMN replay_before    timestamptz,
    ADD COLUMN replay_was_done  boolean NOT NULL DEFAULT false;

-- Waves that produced before this column existed: their campaign's last
-- change is the best bound there is.
UPDATE campaign_waves w SET checkpointed_at = c.updated_at
FROM campaigns c
WHERE c.id = w.campaign_id AND (w.cursor IS NOT NULL OR w.done);
