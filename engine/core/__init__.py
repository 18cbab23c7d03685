"""The core: settings, clock, database, models, schema, errors, validation, logs, tokens, broker set-up."""
