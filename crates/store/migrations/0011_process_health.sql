-- What each running Herald process last said of its own readiness (the
-- answer of its /readyz), so that `herald cluster status` shows every role's
-- health in one place. Rows of processes silent for a day are removed.
CREATE TABLE process_health (
    process     text PRIMARY KEY,
    command     text NOT NULL,
    ready       boolean NOT NULL,
    checks      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
