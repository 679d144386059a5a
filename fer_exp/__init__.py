"""fer_exp: facial-expression classifier experiments, configured by Hydra, recorded in MLflow."""
