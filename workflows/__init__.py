"""The invitation workflow: states and transitions, steps, the sweep, and the actors."""

# The engine's API uses the transition table and the table uses the engine's models: load the
# engine first, whichever of the two a program imports first, so neither sees the other half-made.
import engine  # noqa: F401
