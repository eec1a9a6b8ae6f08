-- Engines take due timers earliest first, in (due_at, trigger_id, event_id)
-- order, a fire batch at a time. With an index on due_at alone, each take
-- read and sorted every pending timer already due to return its first
-- thousand: with 100,000 users due together, each batch sorted them all
-- again. In the order of the take, the scan stops at the batch's end.
CREATE INDEX trigger_timers_due_in_order ON trigger_timers (due_at, trigger_id, event_id)
    WHERE status = 'pending';
DROP INDEX trigger_timers_due;
