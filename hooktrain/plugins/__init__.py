"""hooktrain's built-in plugins: one module per config group, registered like third-party ones."""
