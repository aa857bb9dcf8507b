"""The IR: the op registry (ops), the graph store (graph), the compiled network (network) and the words of the language (vocabulary)."""
