"""routerctl: the command line of the router appliance."""
