"""The command line: the only importer of argparse. One module per verb group, each
with ``register(sub)`` next to its handlers; ``main`` parses, loads the configuration and
reports errors."""
