"""MQTT brokers for the edge: an embedded amqtt broker and a production Mosquitto config.

Nothing is imported here on purpose: `broker.embedded` pulls in amqtt (and its plugin
machinery), which only the `edgekite broker` command and an edge running the embedded broker
need, so the CLI imports it lazily.
"""
