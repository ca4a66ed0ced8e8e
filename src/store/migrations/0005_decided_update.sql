-- The update (a moderator's click) that approved or rejected a pending post: its redelivery
-- knows the decision as its own and finishes what it began (the moderator chat's message).
ALTER TABLE posts ADD COLUMN decided_update bigint;
