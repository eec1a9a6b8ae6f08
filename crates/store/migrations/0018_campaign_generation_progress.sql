-- A resumed, relaunched or recovered campaign counts its progress within its
-- generation. The outcome log holds every outcome of the campaign's message,
-- earlier generations' too, and some of those are for devices the new walk
-- no longer reaches (a token rejected and invalidated, an installation opted
-- out or deleted, a filter that no longer matches): counted as settled, they
-- made `pending` reach 0 while the new generation still had deliveries out.
--
-- * `generation_started_at`: when the current generation began (NULL: a
--   campaign from before this column; everything counts, as before).
-- * `settled_before`: devices a wave walked whose delivery already had an
--   outcome from before that time (produced, not handed out again).
-- * Outcomes are stamped with the time they are written, not when their
--   transaction began: with the share lock a new generation takes on the log,
--   an outcome stamped before the generation began is committed before it,
--   so the scheduler's walk sees it.
-- * `generation_started_for`: the generation that time belongs to. A process
--   from before this change that starts a generation leaves both as they
--   were; the mismatch reads as NULL, not as the previous generation's start.
ALTER TABLE campaigns ADD COLUMN generation_started_at timestamptz,
                      ADD COLUMN generation_started_for bigint;
ALTER TABLE campaign_waves ADD COLUMN settled_before bigint NOT NULL DEFAULT 0;
ALTER TABLE delivery_outcomes ALTER COLUMN recorded_at SET DEFAULT clock_timestamp();
