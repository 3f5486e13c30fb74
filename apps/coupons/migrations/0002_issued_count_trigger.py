"""PostgreSQL keeps `issued_count` itself: statement-level triggers add (or subtract) the
number of coupons a statement inserted (or deleted), and the campaign's check constraint
`issued_count <= total_quantity` then refuses any statement that would over-issue, whatever
Redis or Python believed. One campaign-row update per statement, so a batch of 2,000
coupons costs one update, not 2,000."""

from django.db import migrations

FORWARD = """
CREATE FUNCTION coupons_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE coupons_campaign c SET issued_count = c.issued_count + n.added
    FROM (SELECT campaign_id, count(*) AS added FROM inserted GROUP BY campaign_id) n
    WHERE c.id = n.campaign_id;
    RETURN NULL;
END $$;

CREATE FUNCTION coupons_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE coupons_campaign c SET issued_count = c.issued_count - n.removed
    FROM (SELECT campaign_id, count(*) AS removed FROM deleted GROUP BY campaign_id) n
    WHERE c.id = n.campaign_id;
    RETURN NULL;
END $$;

CREATE TRIGGER coupons_coupon_counted_insert AFTER INSERT ON coupons_coupon
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION coupons_count_inserted();
CREATE TRIGGER coupons_coupon_counted_delete AFTER DELETE ON coupons_coupon
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION coupons_count_deleted();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS coupons_coupon_counted_insert ON coupons_coupon;
DROP TRIGGER IF EXISTS coupons_coupon_counted_delete ON coupons_coupon;
DROP FUNCTION IF EXISTS coupons_count_inserted();
DROP FUNCTION IF EXISTS coupons_count_deleted();
"""


class Migration(migrations.Migration):
    dependencies = [("coupons", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
