"""The front end: the grammar's parser into syntax trees (syntax) and the reader of files, libraries and the zoo (loader)."""
