"""The invitation workflow: states and transitions, steps, the sweep, and the actors."""
