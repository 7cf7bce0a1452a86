//! Resolving symlinks in git trees (the ignore, partial and complete modes of
//! just-mr and just serve). Not implemented yet.
