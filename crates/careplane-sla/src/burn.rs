//! Multi-window multi-burn-rate alerts (the SRE workbook's, chapter 5).
