-- five statements; the third reads a column that does not exist
CREATE VIEW one AS SELECT 1 AS a;
CREATE VIEW two AS SELECT a + 1 AS b FROM one;
SELECT no_such_column FROM two;
CREATE VIEW four AS SELECT 4;
SELECT * FROM four;
