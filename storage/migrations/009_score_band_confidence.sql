-- What backs each window's score, for every scored window (issue 16): the typical deviation of
-- the expected window mean (the API and the dashboard draw the band expected ± 3 typical
-- deviations from it; before this column only alerting windows carried it, in `explanation`),
-- and the confidence of the score (windows of its own history the series had learnt /
-- the ensemble's min_windows, in [0, 1]) with `warming` (confidence below 1: the series is still
-- learning and is scored partly from the population of similar series).
-- Nullable, no default: rows stored before this migration (or by an older worker) have none,
-- and adding them to the partitioned parent is a catalog change only (every partition gets them).
ALTER TABLE scores
    ADD COLUMN IF NOT EXISTS typical_deviation double precision,
    ADD COLUMN IF NOT EXISTS confidence        double precision,
    ADD COLUMN IF NOT EXISTS warming           boolean;
