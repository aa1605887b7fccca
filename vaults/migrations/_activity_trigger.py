"""The PostgreSQL function behind the activity log's append-only trigger (0004), in its
versions: 0004's, and 0015's, which also lets a counted refusal's count and last time go up."""


def _function(allowed_too: str = "") -> str:
    """The trigger function: it refuses every UPDATE and DELETE but the one update that
    deleting a user makes (user_id set to NULL, nothing else changed), and ``allowed_too``."""
    return f"""
CREATE OR REPLACE FUNCTION vaults_activityentry_append_only() RETURNS trigger AS $$
DECLARE
    kept vaults_activityentry%ROWTYPE;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.user_id IS NULL AND OLD.user_id IS NOT NULL THEN
        kept := NEW;
        kept.user_id := OLD.user_id;
        IF kept IS NOT DISTINCT FROM OLD THEN
            RETURN NEW;
        END IF;
    END IF;
{allowed_too}    RAISE EXCEPTION 'activity log entries are append-only: % refused', TG_OP;
END
$$ LANGUAGE plpgsql;
"""


APPEND_ONLY_SQL = _function()

# A counted refusal (vaults.activity): its count goes up and its last time forward, alone.
COUNTED_SQL = _function(
    """    IF TG_OP = 'UPDATE' AND OLD.coalesce_key IS NOT NULL
            AND NEW.repeat_count > OLD.repeat_count AND NEW.last_at >= OLD.last_at THEN
        kept := NEW;
        kept.repeat_count := OLD.repeat_count;
        kept.last_at := OLD.last_at;
        IF kept IS NOT DISTINCT FROM OLD THEN
            RETURN NEW;
        END IF;
    END IF;
"""
)
