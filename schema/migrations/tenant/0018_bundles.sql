-- 0018: bundles. A driver may be offered several ready deliveries of one vendor as one offer
-- with a drop-off sequence (dispatch/matching/bundle_offers.py); accepting takes them all in
-- one transaction, which records here which bundle each delivery belongs to and its place in
-- the drop-off order. The tracking page shows "stop k of n" from these columns, and the
-- tracker's drop-off ETA for stop k runs through the stops before it.
--
-- bundle_id: shared by the deliveries accepted together (NULL: delivered on its own);
-- bundle_seq: 1-based drop-off position; bundle_size: how many stops the bundle had when it
-- was accepted. The three are set together or not at all. No new table and no RLS change:
-- the columns live on deliveries, which 0009 already puts under RLS and grants.
ALTER TABLE deliveries
    ADD COLUMN bundle_id UUID,
    ADD COLUMN bundle_seq SMALLINT,
    ADD COLUMN bundle_size SMALLINT,
    ADD CONSTRAINT deliveries_bundle_columns CHECK (
        (bundle_id IS NULL AND bundle_seq IS NULL AND bundle_size IS NULL)
        OR (bundle_id IS NOT NULL AND bundle_size BETWEEN 2 AND 10 AND bundle_seq BETWEEN 1 AND bundle_size)
    );

CREATE UNIQUE INDEX deliveries_bundle_stop ON deliveries (bundle_id, bundle_seq) WHERE bundle_id IS NOT NULL;
