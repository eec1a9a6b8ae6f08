-- Campaigns, the waves of their current generation with each wave's
-- checkpoint, and uploaded audience lists.

CREATE TABLE campaigns (
    id                     uuid PRIMARY KEY,
    app_id                 uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    -- UUIDv5(campaign id): every launch of the campaign sends this message.
    message_id             uuid NOT NULL UNIQUE,
    name                   text NOT NULL,
    status                 text NOT NULL DEFAULT 'draft'
                           CHECK (status IN ('draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled')),
    -- Bumped by launch and resume: the audience is walked again from the top,
    -- and senders tell an old generation's jobs from the new one's.
    generation             bigint NOT NULL DEFAULT 0,
    spec                   jsonb NOT NULL,
    audience_kind          text NOT NULL CHECK (audience_kind IN ('all', 'install_ids', 'custom_ids')),
    rate_limit_per_second  integer,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    launched_at            timestamptz,
    completed_at           timestamptz
);
CREATE INDEX campaigns_app ON campaigns (app_id, created_at);
CREATE INDEX campaigns_active ON campaigns (status) WHERE status IN ('scheduled', 'running');

-- One row per wave of the current generation: the whole audience, or one time
-- zone. `cursor` is the last install id handed to Kafka (and acknowledged).
CREATE TABLE campaign_waves (
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    generation   bigint NOT NULL,
    zone         text NOT NULL,
    due_at       timestamptz NOT NULL,
    cursor       text,
    produced     bigint NOT NULL DEFAULT 0,
    done         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (campaign_id, zone)
);

CREATE TABLE campaign_audience_ids (
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    value        text NOT NULL,
    PRIMARY KEY (campaign_id, value)
);

-- An app-wide ceiling on campaign sends, shared by all its campaigns.
ALTER TABLE apps ADD COLUMN campaign_rate_limit_per_second integer;

CREATE INDEX installations_zone ON installations (app_id, time_zone, install_id);
