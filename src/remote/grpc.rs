//! A REAPI client for an external execution endpoint. Not implemented yet.
