"""Reports of run directories: run records, tables, seed groups, paper-vs-strong comparison, figures."""
