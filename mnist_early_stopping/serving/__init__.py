"""A trained network as a predictor: loading it, TFLite export, users' pictures, mnist-predict."""
