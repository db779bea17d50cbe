"""Ray Serve layer (ingress, tokenizer deployment, model replicas): see the Serve issue."""
