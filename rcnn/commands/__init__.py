"""One module per `rcnn` subcommand; each defines ``register(subparsers)``."""
