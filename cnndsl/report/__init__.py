"""Reports on a compiled network: the summary table, the graphviz picture and the expansion back to .cnn text."""
