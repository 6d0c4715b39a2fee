"""Scripts that build, train and evaluate the embedded tiny-shapes-sd model."""
