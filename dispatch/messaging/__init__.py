"""The WhatsApp Business Cloud API channel: outbound sending and the inbound webhook."""
