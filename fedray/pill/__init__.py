"""The pill identifier, built on fedray's public seams: synthetic pill world, pill importers,
pill models and their public-pill pretraining. Nothing outside this package imports it."""
