//! CSV loaders for tabular sets, NAB series and SKAB files.
