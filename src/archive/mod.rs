//! Unpacking source archives (tar with any common compression, zip, 7-Zip)
//! into a directory, refusing hostile content. Not implemented yet.
