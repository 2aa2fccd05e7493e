"""The site side: slides, features, patient bags, DP training, the ClientApp."""
