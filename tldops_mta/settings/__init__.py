"""What the operator sets: the configuration file and the policy files in force."""
