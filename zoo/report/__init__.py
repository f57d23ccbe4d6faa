"""`zoo-chart`: tables and plots over run folders."""
