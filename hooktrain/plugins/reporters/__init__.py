"""Built-in reporters: one module per tracker, each imported only when selected."""
