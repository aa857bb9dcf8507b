"""The command line, the language server, the editor grammars, the Pygments lexer and the ONNX export."""
