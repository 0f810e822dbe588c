"""The engine: the pure state machine (``decide``) and the runner that carries out its effects."""
