"""Engine implementations. Each module imports only what its engine needs
(the transformers engine imports torch), so import the one you build."""
