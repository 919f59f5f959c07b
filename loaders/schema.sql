-- geodrop source tables (DESIGN.md section 1). Column names are the contract; extra columns are ignored.
-- Times are epoch seconds (UTC). Geometries are GeoJSON text (WGS84 lng/lat Polygon or MultiPolygon).

CREATE TABLE IF NOT EXISTS districts (
  code        INT          NOT NULL PRIMARY KEY,  -- 6-digit administrative code, e.g. 440305
  name        VARCHAR(100) NOT NULL,
  parent_code INT          NULL,
  geojson     LONGTEXT     NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS pois (
  poi_id      BIGINT       NOT NULL PRIMARY KEY,
  poi_set_id  BIGINT       NOT NULL,
  lat         DOUBLE       NOT NULL,
  lng         DOUBLE       NOT NULL,
  name        VARCHAR(200) NULL,
  KEY pois_set (poi_set_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS tasks (
  task_id       BIGINT       NOT NULL PRIMARY KEY,
  name          VARCHAR(200) NOT NULL,
  district_code INT          NOT NULL,
  poi_set_id    BIGINT       NOT NULL,
  starts_at     BIGINT       NOT NULL,
  ends_at       BIGINT       NOT NULL,
  enabled       TINYINT      NOT NULL DEFAULT 1,  -- the kill switch: 0 hides the task without a rebuild
  stagger_s      INT         NULL,  -- seconds between player groups' openings (NULL or 0: all open at starts_at)
  stagger_groups INT         NULL,  -- player groups (NULL: 5 when staggered)
  KEY tasks_district (district_code)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS task_prizes (
  task_id    BIGINT      NOT NULL,
  prize_type VARCHAR(40) NOT NULL,
  quota      BIGINT      NOT NULL,
  weight     DOUBLE      NOT NULL,
  rate_per_s DOUBLE      NULL,
  PRIMARY KEY (task_id, prize_type)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS exclusion_zones (
  id      VARCHAR(64)  NOT NULL PRIMARY KEY,
  reason  VARCHAR(200) NULL,
  geojson LONGTEXT     NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
