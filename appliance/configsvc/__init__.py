"""The config service: routing policy, keys and overrides from etcd (issue #6)."""
