"""The kernel data plane: what each host's kernel must hold, and the code that makes it so."""
