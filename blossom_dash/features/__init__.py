"""Features built on the gateway: compare, batch, conversations, gallery, snippets."""
