-- a typo in the second statement
SELECT 1;
SELEC 2 FROM nowhere;
