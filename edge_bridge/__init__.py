"""The edge bridge: broker messages in, validated rows out to the store, acks after commit."""
